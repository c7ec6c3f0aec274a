using ComposerSharp.Cli;
return CliApp.Run(args);
