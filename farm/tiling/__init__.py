"""The frame-tiling core: exact integer tile plans (:mod:`.plan`) and bit-exact frame assembly
(:mod:`.assemble`). Kept free of imports: planning a job's tiles needs no numpy."""
