"""The built-in plug-ins beyond the seams the job config reads directly (tasks, methods, strategies, data).

Importing this module imports every package that registers a section, a check, a client mod, a codec, a
privacy mechanism, a stream kind or an observer, so that their registries are complete before a job is built.
It is the one list of them: a new plug-in package is one line here (or imported by the user before building a
job, as a test's toy plug-ins are).
"""

import ffm.continual
import ffm.head_aggregation
import ffm.mods
import ffm.observers
import ffm.privacy
import ffm.prompt_search
import ffm.secagg  # noqa: F401 - secure aggregation, a privacy mechanism
