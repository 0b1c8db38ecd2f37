"""The model's working space: orientation, spacing and intensity in (:mod:`.working_space`, :mod:`.resampling`),
and the way back onto the input's exact grid (:mod:`.input_grid`).
"""
