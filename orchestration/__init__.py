"""TFX-style orchestration: ``tirec run`` from raw logs to a blessed, served model, span after
span (:mod:`.runner`), with typed components (:mod:`.components`), artifacts with fingerprints
(:mod:`.artifacts`), a SQLite metadata store (:mod:`.metadata`) and a report (:mod:`.report`).
The one package that imports all the others; none of them imports it."""
