"""Typed errors. The CLI turns each into one line on stderr and exit code 2."""


class CnnlabError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DataError(CnnlabError):
    """A data file or folder is missing, unreadable or malformed."""


class ConfigError(CnnlabError):
    """A recipe or an override is invalid."""


class CheckpointError(CnnlabError):
    """A run folder or checkpoint is missing, torn or not ours."""


class TrainingError(CnnlabError):
    """Training cannot go on (for example a non-finite loss)."""


class NotAnImageError(DataError):
    """Data given as an image is not one, or not in a format cnnlab reads."""


class CnnlabWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it as one line."""


class NothingFound(CnnlabError):
    """A photo holds nothing the model was trained to see (no garment stands out from the background):
    said instead of a guess. Commands that read many photos say it for that photo and go on."""
