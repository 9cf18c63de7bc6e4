"""Command-line tools: export_hf, merge_lora, check_data."""
