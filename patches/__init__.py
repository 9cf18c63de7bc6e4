"""Domain plugins for InternVL-Med. The core discovers them through entry points; nothing here is imported by the core by name."""
