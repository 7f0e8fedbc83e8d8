"""Convert stage: replace foreign dynamic-conv modules by canonical dyconv_deploy.nn layers."""
