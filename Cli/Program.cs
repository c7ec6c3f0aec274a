using System.CommandLine;
using ComposerSharp.Cli;

return CliApp.Run(args);
