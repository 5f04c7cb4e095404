"""Everything that touches video and sound files; numpy arrays out, no torch.

- `video`: probe a file, read the key frame and the next one frame-exactly (PyAV);
- `audio`: a mono window around a time at a target rate, `resample`;
- `flow`: Farnebäck / DIS optical flow at a working resolution;
- `encode`: write MP4 files (synthetic clips, localize overlays).
"""
