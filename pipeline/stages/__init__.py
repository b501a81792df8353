"""One module per pipeline stage; each works on one window and commits its work with its mark."""
