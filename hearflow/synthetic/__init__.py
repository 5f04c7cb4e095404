"""The synthetic lab: videos of sounding objects whose answer is known, and what runs on them.

- `clips` (with `plan` and `render`): the generator behind `hearflow synth`;
- `presets`: the demo's CPU-sized configurations;
- `baselines`: training-free methods scored like models;
- `pretrain`: the study's stand-in for ImageNet (a classifier on other classes);
- `lab`: data, training and scoring shared by the demo and the study;
- `demo`, `study`, `report`: `hearflow demo` and the flow-prior study.
"""
