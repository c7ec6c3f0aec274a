// The `train` command is being built (issue: the main job); until then the CLI says so and exits non-zero.
Console.Error.WriteLine("composersharp: the train command is not available yet.");
return 2;
