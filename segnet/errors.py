"""The project's own error type: every problem with user input surfaces as one of these."""


class DatasetError(ValueError):
    """Raised when an archive or a .mat file does not hold a valid multi-digit MNIST dataset.

    The message always names the offending file (and the zip member where there is one).
    """


class TrackingError(ValueError):
    """Raised when the MLflow tracking store cannot be reached; the message names its URI and the fix."""


class ServerError(RuntimeError):
    """Raised when the shared tracking server or its database cannot be set up or started; says what to do."""
