"""tb_gradstats: the Gradient Health tab for TensorBoard."""

from setuptools import find_packages, setup

setup(
    name="tb_gradstats",
    version="0.1.0",
    description="Gradient Health: per-layer, per-dtype gradient statistics for Keras in TensorBoard",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The top-level frontend/ ships inside the wheel as tb_gradstats/frontend: no build step.
    packages=find_packages(include=["tb_gradstats", "tb_gradstats.*"])
    + ["tb_gradstats.frontend", "tb_gradstats.frontend.views"],
    package_dir={"tb_gradstats.frontend": "frontend"},
    package_data={"tb_gradstats.frontend": ["*.js", "*.css", "views/*.js"]},
    install_requires=[
        "tensorflow>=2.16",
        "tensorboard>=2.16",
        "numpy",
        "werkzeug",
    ],
    extras_require={
        "dev": [
            "pytest>=7",
            "ml_dtypes",
            "playwright",
            "ruff",
            "scikit-learn",
        ],
        "demo": ["scikit-learn"],
    },
    entry_points={
        "tensorboard_plugins": ["gradient_health = tb_gradstats.plugin:GradientHealthLoader"],
        "console_scripts": ["tb-gradstats = tb_gradstats.cli:main"],
    },
)
