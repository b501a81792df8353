"""Error classes and what to do about each. The resilience issue grows this into breakers and quota."""
