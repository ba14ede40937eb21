"""Video decoding and frame sampling, every frame named by its presentation timestamp.

``probe`` opens a file once (:mod:`.container`, PyAV) and indexes its frames (:mod:`.frame_index`,
from the MP4 sample tables in :mod:`.mp4_index` or a packet scan); ``sample_times`` picks the times
(:mod:`.sampling`); ``read_frames`` (:mod:`.reader`) decodes the frames shown then, exactly or at the
nearest keyframes (:mod:`.decode`). Every problem a user can cause raises :class:`~crosslmm_cli.errors.UserError`.
"""

from .probe import VideoInfo, check_path, probe
from .reader import SampledFrames, frame_files, read_frames
from .sampling import MAX_SIDE, SEEK_MODES, SamplingRequest, sample_times

__all__ = ["MAX_SIDE", "SEEK_MODES", "SampledFrames", "SamplingRequest", "VideoInfo", "check_path", "frame_files", "probe",
           "read_frames", "sample_times"]
