"""One package per simulated platform; `imsim.registry` lists them."""
