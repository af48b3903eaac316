"""dinoseg.data_pipelines: record schema, dataset preparers, synthetic data and grain pipelines
(installed as `dinoseg.data_pipelines`)."""
