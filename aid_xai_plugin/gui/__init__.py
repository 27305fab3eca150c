"""Desktop dialogs of the plugin (beside the Processing layer; the core never imports them)."""
