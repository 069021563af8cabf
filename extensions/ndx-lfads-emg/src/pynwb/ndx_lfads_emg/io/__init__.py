"""Object mappers of the extension's types (how builders read from a file become containers)."""
