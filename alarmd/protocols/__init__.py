"""Pure protocol codecs: bytes in, events and reply bytes out; no I/O, no clock reads."""
