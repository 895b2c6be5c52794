"""VOC 2012 on disk, synthetic VOC-format data, and the joint image+mask transforms."""
