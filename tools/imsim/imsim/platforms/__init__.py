"""One package per simulated platform; `imsim.registry` finds them."""
