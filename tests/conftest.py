"""Tests run in float64 (set once here, by the caller, never by the library)."""
import jax

jax.config.update("jax_enable_x64", True)
