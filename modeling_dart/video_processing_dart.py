# Copyright 2026 The modeling_dart Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Video processor for DART VideoMamba models (PIL/NumPy backend: no torchvision, no torchcodec).

Transformers 5's `BaseVideoProcessor` / `AutoVideoProcessor` need torchvision (and torchcodec + FFmpeg to decode).
[`DartVideoProcessorPil`] instead follows the image-processor style of `VideoMAEImageProcessorPil`: it samples
`num_frames` frames per video and runs every frame through the DART image pipeline ([`DartImageProcessorPil`]:
resize, centre crop, rescale, normalise).

It is a video processor, not an image processor: `save_pretrained` writes `video_preprocessor_config.json` (the
video-processor file) with an `auto_map` entry for `AutoVideoProcessor`, and it is registered with the video-processor
mapping only, so that `AutoImageProcessor`'s backends for DART stay image-only (Transformers treats every backend of an
image processor as interchangeable and feeds single images to each). `pipeline("video-classification", model=folder,
trust_remote_code=True)` loads it as the model's video processor, with or without this package installed (`auto_map`;
`AutoVideoProcessor` resolves local classes through the torchvision backend only, so the folder's copy of this module
is what it loads), passes it the file path with `num_frames=config.num_frames, do_sample_frames=True`, and the
processor decodes it with PyAV ([`load_video`]) and samples the frames over the whole video. Without
`trust_remote_code`, pass the processor itself: `pipeline(..., video_processor=DartVideoProcessor.from_pretrained(
folder))`. Folders saved by earlier versions (`preprocessor_config.json`) still load.

Defaults (VideoMamba's Kinetics evaluation): 8 frames, bilinear resize of the shorter side to 224, centre crop
224x224, scale to [0, 1], ImageNet mean/std.

Frame sampling ([`sample_frame_indices`]): the video is split into `num_frames` equal segments and the middle frame of
each segment is taken (TSN-style segment centres; frames repeat when the video is shorter than `num_frames`). A video
that already has exactly `num_frames` frames is kept as is; `num_frames=None` keeps every frame.

[`load_video`] decodes a file with PyAV (imported lazily) and raises a clear `ValueError` for unreadable files.

This module imports only `numpy`, `PIL`, `transformers` and the image processor module, so that it can be copied as
Hub remote code.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import PIL.Image
from transformers.dynamic_module_utils import custom_object_save
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs
from transformers.utils import VIDEO_PROCESSOR_NAME
from transformers.utils.hub import hf_api

from .image_processing_dart import DartImageProcessorPil, _describe, _is_torch_tensor

__all__ = [
    "DartVideoProcessor",
    "DartVideoProcessorPil",
    "load_video",
    "register_video_processor",
    "sample_frame_indices",
]

VIDEOMAMBA_IMAGE_SIZE = 224
VIDEOMAMBA_NUM_FRAMES = 8

_FRAME_TYPES = "PIL images, numpy arrays or torch tensors ((H, W, C) or (C, H, W))"


def sample_frame_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames spread uniformly over a video of `num_available` frames.

    The video is split into `num_frames` equal segments and the middle of each is taken:
    `index_i = floor((i + 0.5) * num_available / num_frames)`. With `num_available == num_frames` this is
    `0, 1, ..., num_frames - 1`; with fewer frames than requested, frames repeat (in order).

    Returns:
        `np.ndarray` of shape `(num_frames,)`, dtype int64, non-decreasing, in `[0, num_available)`.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"`num_frames` must be a positive integer, got {num_frames!r}.")
    if num_available < 1:
        raise ValueError("cannot sample frames from a video with no frames.")
    indices = np.floor((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)
    return np.minimum(indices, num_available - 1)


# ------------------------------------------------------------------------------------------------- decoding
def load_video(path: str | os.PathLike, num_frames: int | None = None) -> np.ndarray:
    """Decode a video file with PyAV into RGB frames.

    Args:
        path: a video file (anything FFmpeg reads: mp4, avi, webm, ...) or an http(s) URL.
        num_frames (`int`, *optional*): sample this many frames with [`sample_frame_indices`]; all frames if None.

    Returns:
        `np.ndarray` of shape `(frames, height, width, 3)`, dtype uint8.

    Raises:
        `FileNotFoundError` for a missing file, `ValueError` for a file that is not a decodable video (corrupt,
        truncated, no video stream, no frames).
    """
    try:
        import av
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Decoding videos needs PyAV: `pip install av`.") from error

    path = os.fspath(path)
    if not path.startswith(("http://", "https://")) and not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    kept, count = {}, 0
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream.")
            stream = container.streams.video[0]
            expected = stream.frames  # from the container header; 0 when unknown
            wanted = None
            if num_frames is not None and expected > 0:  # convert only the frames that will be kept
                wanted = set(sample_frame_indices(expected, num_frames).tolist())
            for index, frame in enumerate(container.decode(stream)):
                count += 1
                if wanted is None or index in wanted:
                    kept[index] = frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as error:
        raise ValueError(
            f"cannot decode {path} as a video (corrupt, truncated or unsupported file): {error}"
        ) from error
    if count == 0:
        raise ValueError(f"no frame could be decoded from {path} (empty or corrupt video).")
    if wanted is not None and count != expected:  # the header's frame count was wrong: decode everything
        return load_video(path)[sample_frame_indices(count, num_frames)]
    indices = range(count) if num_frames is None else sample_frame_indices(count, num_frames).tolist()
    return np.stack([kept[i] for i in indices])


# ------------------------------------------------------------------------------------------------- structure
def _is_array(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or _is_torch_tensor(obj)


def _is_frame(obj: Any) -> bool:
    return isinstance(obj, PIL.Image.Image) or (_is_array(obj) and obj.ndim in (2, 3))


def _is_video(obj: Any) -> bool:
    return isinstance(obj, (list, tuple)) or (_is_array(obj) and obj.ndim == 4)


def _as_videos(videos: Any, num_frames: int | None = None) -> tuple[list[list[Any]], bool]:
    """Turn the `videos` argument into a list of videos, each a list of frames; also say whether one video was given.

    One video: a list of frames, a 4-D array `(T, H, W, C)` or tensor `(T, C, H, W)` / `(T, H, W, C)`, or a path.
    A batch: a list of such videos, or a 5-D array / tensor `(B, T, ...)`. Video files are decoded with [`load_video`]
    (only the `num_frames` sampled frames are converted when `num_frames` is given).
    """
    if videos is None:
        raise TypeError(f"`videos` is None; expected a video (a list of {_FRAME_TYPES}, or a 4-D array/tensor) or a "
                        "list of videos.")
    if isinstance(videos, (str, os.PathLike)):
        return [list(load_video(videos, num_frames))], True
    if _is_array(videos):
        if videos.ndim == 4:
            if videos.shape[0] == 0:
                raise ValueError(f"`videos` has no frames (shape {tuple(videos.shape)}).")
            return [list(videos)], True
        if videos.ndim == 5:
            if videos.shape[0] == 0:
                raise ValueError(f"`videos` is an empty batch (shape {tuple(videos.shape)}).")
            return [list(video) for video in videos], False
        raise ValueError(
            f"`videos` has {videos.ndim} dimensions (shape {tuple(videos.shape)}); expected one video as a 4-D "
            "(frames, height, width, channels) or (frames, channels, height, width) array, or a 5-D batch of videos."
            + (" A single image is not a video: wrap its frames in a list." if videos.ndim in (2, 3) else "")
        )
    if isinstance(videos, PIL.Image.Image):
        raise ValueError("`videos` is a single PIL image; a video is a list of frames (pass [image] for a one-frame "
                         "video).")
    if not isinstance(videos, (list, tuple)):
        raise TypeError(f"`videos` has type {_describe(videos)}; expected a list of frames ({_FRAME_TYPES}), a 4-D "
                        "array/tensor, a path to a video file, or a list of those.")
    if len(videos) == 0:
        raise ValueError("`videos` is an empty list; expected at least one frame or video.")
    if all(_is_frame(item) for item in videos):
        return [list(videos)], True
    batch = []
    for v, item in enumerate(videos):
        if isinstance(item, (str, os.PathLike)):
            batch.append(list(load_video(item, num_frames)))
        elif _is_video(item):
            if len(item) == 0:
                raise ValueError(f"`videos[{v}]` has no frames.")
            frames = list(item)
            for i, frame in enumerate(frames):
                if not _is_frame(frame):
                    raise TypeError(f"`videos[{v}][{i}]` has type {_describe(frame)}"
                                    + (f" with {frame.ndim} dimensions" if _is_array(frame) else "")
                                    + f"; expected a frame: one of {_FRAME_TYPES}.")
            batch.append(frames)
        elif _is_frame(item):
            raise ValueError(f"`videos` mixes frames and videos (`videos[{v}]` is a frame, other entries are not); "
                             "pass one video as a list of frames or a batch as a list of videos.")
        else:
            raise TypeError(f"`videos[{v}]` has type {_describe(item)}; expected a frame ({_FRAME_TYPES}) or a video "
                            "(a list of frames, a 4-D array/tensor or a path).")
    return batch, False


def _frame_size(frame: Any) -> tuple[int, int] | None:
    """(height, width) of a frame without converting it, or None when its layout is unclear (checked later)."""
    if isinstance(frame, PIL.Image.Image):
        return frame.height, frame.width
    shape = tuple(frame.shape)
    if len(shape) == 2:
        return shape
    first, last = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
    if first and not last:
        return shape[1], shape[2]
    if last and not first:
        return shape[0], shape[1]
    return None


def _check_frame_sizes(frames: list[Any], where: str) -> None:
    sizes = [_frame_size(frame) for frame in frames]
    reference = next(((i, s) for i, s in enumerate(sizes) if s is not None), None)
    if reference is None:
        return
    for i, size in enumerate(sizes):
        if size is not None and size != reference[1]:
            raise ValueError(
                f"`{where}` has frames of different sizes: frame {reference[0]} is {reference[1][0]}x{reference[1][1]} "
                f"(height x width) but frame {i} is {size[0]}x{size[1]}; all frames of a video must have the same size."
            )


# ------------------------------------------------------------------------------------------------- processor
class DartVideoProcessorKwargs(ImagesKwargs, total=False):
    """Image-processor keyword arguments plus `num_frames` (frames sampled per video; None keeps all) and
    `do_sample_frames` (False keeps all frames; the keyword `pipeline("video-classification")` passes)."""

    num_frames: int | None
    do_sample_frames: bool | None


class DartVideoProcessorPil(DartImageProcessorPil):
    r"""
    Constructs a DART video processor with the PIL/NumPy backend (no torchvision required).

    Every video is reduced to `num_frames` frames ([`sample_frame_indices`]: TSN-style segment centres), then each
    frame goes through the [`DartImageProcessorPil`] steps: RGB conversion, bilinear resize of the shorter side to
    224, centre crop 224x224, rescale by 1/255 and ImageNet normalisation (VideoMamba's Kinetics evaluation setting).

    Inputs (`videos`): one video, given as a list of frames (PIL images, `(H, W, C)` / `(C, H, W)` numpy arrays or
    torch tensors), a 4-D numpy array `(T, H, W, C)`, a 4-D torch tensor `(T, C, H, W)` or `(T, H, W, C)`, or a path to
    a video file (decoded with PyAV); or a batch: a list of such videos or a 5-D array/tensor. All frames of one video
    must have the same size (a clear `ValueError` otherwise); videos of a batch may differ (they are resized and
    cropped to the same size).

    `pipeline("video-classification")` hands this processor the video's path (it is loaded as the model's video
    processor) with `num_frames=config.num_frames`: the frames are then sampled over the whole video as above, and an
    unreadable file raises a `ValueError` that names it. It saves and loads `video_preprocessor_config.json`.

    Args:
        num_frames (`int`, *optional*, defaults to 8): frames per video after sampling; `None` keeps every frame.
        do_sample_frames (`bool`, *optional*, defaults to `True`): `False` keeps every frame whatever `num_frames`.
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 224}`): resize target of every frame.
        resample (`PILImageResampling`, *optional*, defaults to `BILINEAR`).
        crop_size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`).
        Other arguments: as in [`DartImageProcessorPil`] (ImageNet mean/std, rescale 1/255, RGB conversion).

    Returns (from `__call__`): a `BatchFeature` with `pixel_values` of shape `(batch_size, num_frames, 3, 224, 224)`,
    float32, with `return_tensors="pt"` (a list of `(num_frames, 3, H, W)` float32 arrays with `return_tensors=None`).
    """

    valid_kwargs = DartVideoProcessorKwargs
    model_input_names = ["pixel_values"]

    num_frames = VIDEOMAMBA_NUM_FRAMES
    do_sample_frames = True
    size = {"shortest_edge": VIDEOMAMBA_IMAGE_SIZE}
    resample = PILImageResampling.BILINEAR
    crop_size = {"height": VIDEOMAMBA_IMAGE_SIZE, "width": VIDEOMAMBA_IMAGE_SIZE}

    # ------------------------------------------------------------------ saved as a video processor
    @classmethod
    def register_for_auto_class(cls, auto_class="AutoVideoProcessor"):
        """As for image processors, but the default Auto class is `AutoVideoProcessor` (Transformers calls this without
        an argument on classes it loads as remote code)."""
        return super().register_for_auto_class(auto_class)

    def to_dict(self) -> dict[str, Any]:
        """The processor's settings. No `image_processor_type` (this is not an image processor) and no
        `video_processor_type` either: `AutoVideoProcessor` resolves a named type through its torchvision backend
        only, and with a type but no resolvable class it would ask on the terminal whether to run the folder's code
        even where this package is installed; the `auto_map` entry names the class."""
        output = super().to_dict()
        output.pop("image_processor_type", None)
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Save to `save_directory/video_preprocessor_config.json` (plus this module and an `AutoVideoProcessor`
        `auto_map` entry when registered for remote code); `push_to_hub` as for image processors."""
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` ({save_directory}) must be a directory, not a file.")
        os.makedirs(save_directory, exist_ok=True)
        if push_to_hub:
            commit_message = kwargs.pop("commit_message", None)
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            repo_id = hf_api().create_repo(repo_id, exist_ok=True, **kwargs).repo_id
            files_timestamps = self._get_files_timestamps(save_directory)
        if isinstance(getattr(self, "auto_map", None), dict):  # loaded from an earlier folder: no image-processor entry
            self.auto_map.pop("AutoImageProcessor", None)
        if self._auto_class is not None:
            custom_object_save(self, save_directory, config=self)
        path = os.path.join(save_directory, VIDEO_PROCESSOR_NAME)
        self.to_json_file(path)
        if push_to_hub:
            self._upload_modified_files(save_directory, repo_id, files_timestamps, commit_message=commit_message,
                                        token=kwargs.get("token"))
        return [path]

    @classmethod
    def get_image_processor_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Read `video_preprocessor_config.json`, or `preprocessor_config.json` for folders saved by earlier versions
        (or the file named by `image_processor_filename`)."""
        if "image_processor_filename" not in kwargs and not os.path.isfile(pretrained_model_name_or_path):
            try:
                return super().get_image_processor_dict(
                    pretrained_model_name_or_path, image_processor_filename=VIDEO_PROCESSOR_NAME, **kwargs
                )
            except OSError:
                pass
        return super().get_image_processor_dict(pretrained_model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ processing
    def __call__(self, videos: Any = None, *args, **kwargs) -> BatchFeature:
        """Preprocess a video or a batch of videos (see the class docstring)."""
        if videos is None:  # the pipeline and other callers may use the image-processor keyword
            videos = kwargs.pop("images", None)
        return self.preprocess(videos, *args, **kwargs)

    def preprocess(self, videos: Any, *args, **kwargs) -> BatchFeature:
        num_frames = kwargs.get("num_frames")
        if num_frames is not None:
            if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
                raise ValueError(f"`num_frames` must be a positive integer or None, got {num_frames!r}.")
            kwargs["num_frames"] = int(num_frames)
        return super().preprocess(videos, *args, **kwargs)

    def _prepare_image_like_inputs(self, videos, *args, num_frames: int | None = None,
                                   do_sample_frames: bool | None = True, expected_ndims: int = 3,
                                   **kwargs) -> list[list[np.ndarray]]:
        if do_sample_frames is False:
            num_frames = None
        batch, single = _as_videos(videos, num_frames)
        prepared = []
        for v, frames in enumerate(batch):
            where = "video" if single else f"videos[{v}]"
            _check_frame_sizes(frames, where)
            indices = sample_frame_indices(len(frames), num_frames) if num_frames else np.arange(len(frames))
            clip = []
            for i in indices.tolist():
                try:
                    clip.append(self.process_image(frames[i], *args, **kwargs))
                except (TypeError, ValueError) as err:
                    raise type(err)(f"`{where}` frame {i} {err}") from err
            sizes = {frame.shape[1:] for frame in clip}
            if len(sizes) > 1:
                raise ValueError(f"`{where}` has frames of different sizes {sorted(sizes)} (height, width); all frames "
                                 "of a video must have the same size.")
            prepared.append(clip)
        return prepared

    def _preprocess(self, videos: list[list[np.ndarray]], *args, return_tensors=None, num_frames=None,
                    do_sample_frames=None, **kwargs) -> BatchFeature:
        lengths = [len(clip) for clip in videos]
        flat = [frame for clip in videos for frame in clip]
        frames = super()._preprocess(flat, *args, return_tensors=None, **kwargs)["pixel_values"]
        clips, start = [], 0
        for length in lengths:
            clips.append(np.stack(frames[start : start + length]))
            start += length
        if return_tensors is None:
            return BatchFeature(data={"pixel_values": clips})
        shapes = sorted({clip.shape for clip in clips})
        if len(shapes) > 1:
            raise ValueError(
                f"cannot stack videos of different shapes {shapes} (frames, channels, height, width) into one tensor "
                f"(return_tensors={return_tensors!r}); sample the same `num_frames` and keep do_center_crop=True, or "
                "pass return_tensors=None."
            )
        return BatchFeature(data={"pixel_values": np.stack(clips)}, tensor_type=return_tensors)


# Same convention as `DartImageProcessor`: the plain name is the PIL class (there is no torchvision variant).
DartVideoProcessor = DartVideoProcessorPil


def register_video_processor(config_class: type, exist_ok: bool = True) -> None:
    """Register [`DartVideoProcessorPil`] as the `"pil"` video processor of `config_class` (the video-processor
    mapping, not `AutoImageProcessor`'s: that one keeps only image backends). Safe to call more than once.

    `pipeline()` probes `AutoVideoProcessor` for every task; without a local registration it finds the folder's
    `auto_map` (remote code) and, with `trust_remote_code` unset, asks on the terminal (15 s) even for images.
    `AutoVideoProcessor.register` itself demands torchvision, so the mapping it fills is filled directly.
    """
    try:
        from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING
    except ImportError:  # pragma: no cover - other Transformers layouts: the probe may prompt, nothing else changes
        return
    if config_class not in VIDEO_PROCESSOR_MAPPING._extra_content:
        VIDEO_PROCESSOR_MAPPING.register(config_class, {"pil": DartVideoProcessorPil}, exist_ok=True)
