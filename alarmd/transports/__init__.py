"""Device I/O: sockets and ports. Transports frame bytes, call a codec, submit to intake, reply."""
