from s2d_plan.cli import main

if __name__ == "__main__":
    main()
