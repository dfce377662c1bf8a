"""Pure JAX math on arrays, one cell at a time: jit- and vmap-able, no I/O, no configs."""
