"""Export requests: filing outputs from the outbox, the server-side disclosure check, review by
the data holder (four eyes), signed release bundles, withdrawal, resubmission and revocation.

Public entry points are in ``spe.exports.actions``; ``spe.exports.bundle.verify_bundle`` checks a
bundle offline.
"""
