"""Face attributes: plug-ins that estimate categorical attributes of detected faces.

``deid.attributes.base``      :class:`AttributeSpec`, :class:`Estimate`, the estimator contract
``deid.attributes.registry``  :data:`ATTRIBUTES`, the ``attribute`` plug-in kind
``deid.attributes.age_gender``  ``age-gender``: age band and gender (dlib's CC0 networks as ONNX)
``deid.attributes.face_mesh``   ``face-mesh``: mouth open, yaw and pitch bands from the 468-point mesh

Estimates feed :mod:`deid.anonymize.ppas` (AnonymousNet's privacy-preserving attribute
selection); they are never written to the audit or the logs (docs/attributes.md).
"""
