using ComposerSharp.Cli;
using ComposerSharp.Interop;

// Before anything allocates tensors: large tensors reuse heap memory instead of fresh mappings (see NativeAllocator).
NativeAllocator.Tune();
return CliApp.Run(args);
