"""nettee: the network tee of Beowulf clusters (nettee 0.2 command line)."""
