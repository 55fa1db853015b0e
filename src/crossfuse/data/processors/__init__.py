"""Per-modality processors; ``PROCESSORS`` maps a modality kind to its class."""
from crossfuse.data.processors.audio import AudioProcessor
from crossfuse.data.processors.base import Processor
from crossfuse.data.processors.image import ImageProcessor
from crossfuse.data.processors.tabular import TabularProcessor
from crossfuse.data.processors.text import TextProcessor

PROCESSORS = {"image": ImageProcessor, "text": TextProcessor, "tabular": TabularProcessor, "audio": AudioProcessor}


def processor_from_state(state) -> Processor:
    return PROCESSORS[state["kind"]].from_state(state)


__all__ = ["PROCESSORS", "AudioProcessor", "Processor", "ImageProcessor", "TabularProcessor", "TextProcessor",
           "processor_from_state"]
