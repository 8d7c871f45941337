"""OCELOT 2023 cell detection from cell-tissue interaction: read inputs -> align tissue to cell -> model ->
test-time augmentation / ensemble -> points -> write (see README.md for the module map)."""
