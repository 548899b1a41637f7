"""Models: the 3D morphable model and its camera (more to come with the generator issue)."""
