"""Pure tensor functions, no parameters: *_ref oracles beside the fast forms."""
