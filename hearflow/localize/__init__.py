"""`hearflow localize`: where in a video does the sound come from, step by step.

A *step* is one frame of the video: the model sees that frame, the optical flow
from it to the next frame, and ``data.seconds`` (3 s) of audio centred on the
frame's timestamp, and returns a similarity map (``h x w`` cosines). From that map:

- ``heatmap``: the map upsampled to the video's display size with bicubic
  interpolation (OpenCV ``INTER_CUBIC``, as the benchmark metric does) and min-max
  normalised to [0, 1] (all zeros when the map is flat);
- ``peak_xy``: ``(x, y)``, the centre of the similarity map's highest cell in video
  pixels, ``(floor((c + 0.5) W / w), floor((r + 0.5) H / h))`` for cell (row r, column
  c) of an ``h x w`` map on a ``W x H`` frame: the model's own answer (the heatmap's
  highest pixel can sit up to a cell away, moved by the bicubic interpolation);
- ``box``: ``[x0, y0, x1, y1]`` (left, top, right, bottom), the bounding box of the
  8-connected region of heatmap pixels >= ``BOX_THRESHOLD`` (0.6 of the way from the
  map's lowest to its highest value) that contains the peak; pixel edges, so it covers
  the pixels ``x0 <= x < x1``, ``y0 <= y < y1``;
- ``confidence``: the highest value of the raw similarity map upsampled to the
  protocol's 224 x 224 (a cosine, not normalised: `hearflow.negatives.map_max`, the
  same per-sample confidence evaluate's CSV, AP / max-F1 and calibration use);
- ``sounding``: ``confidence > sounding_threshold``, the calibrated decision that a
  visible object makes the sound (``hearflow calibrate`` stores the threshold in the
  checkpoint); None for an uncalibrated checkpoint. The overlay fades the heatmap
  where it is False.

Pixel coordinates are in the video's display orientation (rotated phone videos
come out upright). Inputs are made by the one preprocessing path of training and
evaluation: `hearflow.media.flow.aggregate_flow` at ``data.flow_size`` with
``data.flow_method`` (what `hearflow prepare` computes), the round trip of prepare's
storage (`hearflow.data.prepared.as_stored`: JPEG quality 95 frame, the PNG-quantised flow,
16-bit audio, as the model saw its training and test samples), then
`hearflow.data.transforms.sample_tensors` (test transform). So the step at the
benchmark's key frame (``--key-frame``) has exactly the map evaluation gives the
prepared sample of the same video.

Videos are streamed: a background thread decodes the frames once, in order, and
makes the steps' inputs (with ``input_threads`` threads side by side: all cores but
one when the model runs on a GPU, where the inputs are the whole cost) while the
model runs on the previous batch; overlay frames
wait in a bounded buffer only until their step's map is known and then go straight
to the encoder; the JSON is written as steps arrive; each audio window is read with
one seek. Memory does not grow with the video's length.
"""

from hearflow.localize.localizer import DEFAULT_BATCH_SIZE, Localizer
from hearflow.localize.outputs import localize_video, localize_videos, outputs
from hearflow.localize.steps import BOX_THRESHOLD, LocalizationStep, make_step, map_peak, peak_and_box, region_box

__all__ = [
    "BOX_THRESHOLD",
    "DEFAULT_BATCH_SIZE",
    "LocalizationStep",
    "Localizer",
    "localize_video",
    "localize_videos",
    "make_step",
    "map_peak",
    "outputs",
    "peak_and_box",
    "region_box",
]
