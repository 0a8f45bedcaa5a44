"""The supervisor daemon: config, sockets, watchers, control channel, CLI."""
