"""Photo sizes the user may choose, in px. Kept free of torch: the CLI reads them for its --help."""

# The longer side segmentation works at by default. The nets learned from 256 px images of one facade
# each; validation facades enlarged as a photo would show them lose most at any other working size
# (mAP 0.725 at 256, 0.62 at 384, 0.52 at 512: benchmarks/segment_photo.py, BENCHMARKS.md).
MAX_WORK_SIDE = 256
MIN_WORK_SIDE = 64  # the smallest --max-side; below it a facade's windows are a pixel or two
MIN_SIDE = 32  # photos to segment: smaller than a window of the training crops
# Photos are decoded at most this large. Segmentation runs at `max_side` anyway; the outputs at full
# size cost ~100 bytes a pixel (2.4 GB for 40 MP), at 2048 px at most ~240 MB a photo (measured).
MAX_SIDE = 2048
# The longest side a photo is explained at. Gradients through a U-Net need ~10x the memory of a
# prediction, and the nets learned from 256 px facades anyway (MAX_WORK_SIDE).
MAX_EXPLAIN_SIDE = 512
