from mockgpt.cli import main

main(prog_name="mockgpt")
