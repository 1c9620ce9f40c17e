from lightning_modules.cli import make_cli

if __name__ == "__main__":
    make_cli()
