"""Data synthesis in the SiM3D layout: mesh rendering, procedural demo objects, defects and RGB-D import."""
