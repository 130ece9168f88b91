"""The control channel: one JSON object a line, over a Unix socket or loopback TCP + token."""
