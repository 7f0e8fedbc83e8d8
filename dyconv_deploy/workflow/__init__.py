"""Workflow: the stages driven in order, above all of them (``load`` ... ``runtime``).

:func:`export_model` runs load -> convert -> export -> checker -> lower -> write -> verify and
:func:`verify_model` checks an existing file; both print the stage checklist. They are what the
``export`` and ``verify`` commands call (:mod:`.pipeline`).
"""

from dyconv_deploy.workflow.pipeline import (ExportResult, OptionConflict, check_export_options, export_model,
                                             verify_model)

__all__ = ["ExportResult", "OptionConflict", "check_export_options", "export_model", "verify_model"]
