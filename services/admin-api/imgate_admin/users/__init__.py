"""Users and their IM identities: search, view, link an identity by hand, unlink."""
