using System.CommandLine;
using System.Globalization;
using System.Reflection;
using ComposerSharp.Algorithms;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Cli.Plugins;
using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Spectre.Console;

namespace ComposerSharp.Cli;

/// <summary>
/// The <c>composersharp</c> command line: <c>train</c> (train from a YAML config, or the embedded default),
/// <c>eval</c> (evaluate a checkpoint), with overrides of any config key; <c>predict</c>, <c>generate</c> and
/// <c>export</c>, which need only a checkpoint; and <c>env</c> (what results depend on).
/// </summary>
public static class CliApp
{
    /// <summary>Exit code for a configuration error (bad key, name or value).</summary>
    public const int ConfigErrorExitCode = 2;

    /// <summary>Name of the embedded default configuration.</summary>
    public const string DefaultConfigResource = "default.yaml";

    /// <summary>Runs the command line and returns the process exit code (0 success, 1 failure, 2 configuration error).</summary>
    public static int Run(string[] args, TextWriter? output = null)
    {
        var root = new RootCommand("ComposerSharp: Composer-style training for .NET on TorchSharp.");
        root.Subcommands.Add(BuildCommand("train", "Train a model from a YAML config (the embedded default when --config is not given).", evaluate: false, output));
        root.Subcommands.Add(BuildCommand("eval", "Evaluate a checkpoint (--load-path) on the config's eval_loader.", evaluate: true, output));
        root.Subcommands.Add(InferenceCommands.Predict(output));
        root.Subcommands.Add(InferenceCommands.Generate(output));
        root.Subcommands.Add(InferenceCommands.Export(output));
        root.Subcommands.Add(EnvCommand.Build(output));
        root.Subcommands.Add(DataCommands.Build(output));
        foreach (Command launch in LaunchCommand.Build(output))
        {
            root.Subcommands.Add(launch);
        }

        ParseResult parsed = root.Parse(args);
        if (parsed.Errors.Count > 0 && !args.Contains("--help") && !args.Contains("-h"))
        {
            // A misspelled option or a missing value: say what is wrong and where the help is, not the whole help.
            string command = parsed.CommandResult.Command == root ? "composersharp" : "composersharp " + parsed.CommandResult.Command.Name;
            foreach (System.CommandLine.Parsing.ParseError error in parsed.Errors)
            {
                Console.Error.WriteLine($"{command}: {error.Message}");
            }

            Console.Error.WriteLine($"See '{command} --help' for the options.");
            return ConfigErrorExitCode;
        }

        return parsed.Invoke();
    }

    /// <summary>The embedded default configuration: a small BERT MLM on synthetic data, 1 epoch, amp_bf16 with LowPrecisionLayerNorm.</summary>
    public static string DefaultConfigText()
    {
        using Stream stream = typeof(CliApp).Assembly.GetManifestResourceStream(DefaultConfigResource)
            ?? throw new InvalidOperationException($"The embedded resource {DefaultConfigResource} is missing from the build.");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    /// <summary>
    /// Reads the configuration (file or embedded default), then applies the overrides: first each
    /// <c>--set key.path=value</c>, then the top-level options such as <c>--max-duration</c>.
    /// </summary>
    /// <exception cref="ConfigException">The file or an override is malformed.</exception>
    public static ConfigSection LoadConfig(string? path, IEnumerable<string> sets, IEnumerable<KeyValuePair<string, string>> topLevel)
    {
        ConfigSection config = path is null ? ConfigSection.Parse(DefaultConfigText(), "the embedded default config") : ConfigSection.LoadFile(path);
        foreach (string set in sets)
        {
            int eq = set.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                throw new ConfigException($"--set '{set}' must look like key.path=value, e.g. train_loader.batch_size=16.");
            }

            string key = set[..eq].Trim();
            string value = set[(eq + 1)..].Trim();
            if (key.EndsWith(".name", StringComparison.Ordinal) && ReplacesComponent(config, key, value))
            {
                // A new component name starts its section afresh: the old component's options do not apply to it.
                config.SetPath(key[..^".name".Length], "{name: " + value + "}");
            }
            else
            {
                config.SetPath(key, value);
            }
        }

        foreach ((string key, string value) in topLevel)
        {
            config.SetPath(key, value);
        }

        return config;
    }

    private static bool ReplacesComponent(ConfigSection config, string nameKey, string value)
    {
        ConfigSection? section = config;
        string[] parts = nameKey.Split('.');
        for (int i = 0; i < parts.Length - 1 && section is not null; i++)
        {
            section = section.Get(parts[i]) as ConfigSection;
        }

        return section?.GetString("name") is { } current && current != value;
    }

    /// <summary>The service collection of a run: logging, the built-in components, then each plugin's registrations.</summary>
    /// <exception cref="FileNotFoundException">A plugin file does not exist.</exception>
    /// <exception cref="InvalidOperationException">A plugin cannot be loaded or has no plugin class.</exception>
    public static ServiceCollection CreateServices(IEnumerable<string> plugins, LogLevel level = LogLevel.Information)
    {
        var services = new ServiceCollection();
        services.AddLogging(b => b
            .AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.TimestampFormat = "HH:mm:ss ";
            })
            .SetMinimumLevel(level));
        services.AddComposerSharpComponents();
        foreach (string plugin in plugins)
        {
            PluginLoader.Load(plugin, services);
        }

        return services;
    }

    private static Command BuildCommand(string name, string description, bool evaluate, TextWriter? output)
    {
        var config = new Option<string?>("--config") { Description = "YAML config file (Composer/llm-foundry style keys)." };
        var set = new Option<string[]>("--set") { Description = "Override any key: --set train_loader.batch_size=16 (repeatable). Setting a section's name (e.g. scheduler.name=constant) starts that section afresh.", AllowMultipleArgumentsPerToken = false };
        var plugin = new Option<string[]>("--plugin") { Description = "Assembly with IComposerSharpPlugin classes that register components (repeatable)." };
        var verbose = new Option<bool>("--verbose") { Description = "Log debug messages." };
        var command = new Command(name, description) { config, set, plugin, verbose };

        // One option per scalar top-level key: --max-duration 2ep, --precision amp_bf16, --algorithms low_precision_layernorm, ...
        var topLevel = new List<(string Key, Option<string?> Option)>();
        ConfigSection defaults = ConfigSection.Parse(DefaultConfigText(), "the embedded default config");
        foreach (string key in TrainJob.TopLevelKeys.Where(k => k is not ("model" or "train_loader" or "eval_loader" or "optimizer" or "scheduler")))
        {
            // The help shows the embedded default config's value, the one a run without --config starts from.
            string shown = defaults.Get(key) switch
            {
                string v => $" Default config: {v}.",
                ConfigSection section => $" Default config: {string.Join(", ", section.Keys)}.",
                _ => string.Empty,
            };
            var option = new Option<string?>("--" + key.Replace('_', '-')) { Description = $"Override '{key}'.{shown}" };
            command.Options.Add(option);
            topLevel.Add((key, option));
        }

        command.SetAction(parse =>
        {
            TextWriter err = Console.Error;
            try
            {
                var overrides = topLevel
                    .Select(t => (t.Key, Value: parse.GetValue(t.Option)))
                    .Where(t => t.Value is not null)
                    .Select(t => new KeyValuePair<string, string>(t.Key, t.Value!));
                ConfigSection cfg = LoadConfig(parse.GetValue(config), parse.GetValue(set) ?? Array.Empty<string>(), overrides);
                using ServiceProvider services = CreateServices(parse.GetValue(plugin) ?? Array.Empty<string>(), parse.GetValue(verbose) ? LogLevel.Debug : LogLevel.Information)
                    .BuildServiceProvider();
                var job = new TrainJob(cfg, services);
                if (evaluate)
                {
                    JobResult evaluated = job.Evaluate();
                    if (evaluated.Rank == 0)
                    {
                        PrintSummary(evaluated, output);
                    }

                    return 0;
                }

                // The first SIGINT/SIGTERM stops after the current batch with a checkpoint; a second one aborts.
                using var stop = new GracefulStop(services.GetRequiredService<ILoggerFactory>().CreateLogger("ComposerSharp.Cli"));
                JobResult result = job.Train(stop.Token);
                if (result.Rank != 0)
                {
                    return stop.Signal is null ? 0 : stop.ExitCode; // Distributed: rank 0 prints
                }

                PrintSummary(result, output);
                if (stop.Signal is not null)
                {
                    TextWriter o = output ?? Console.Out;
                    o.WriteLine(result.StoppedByRequest
                        ? $"Stopped by {stop.SignalName} after batch {result.Timestamp.Batch}. " + (result.CheckpointFolder is { } folder
                            ? $"Checkpoints are in {folder}; resume with the same command and --autoresume true."
                            : "No checkpoint was saved (no save folder); the run cannot be resumed.")
                        : $"{stop.SignalName} arrived after training had finished; the run is complete.");
                    return stop.ExitCode;
                }

                return 0;
            }
            catch (ConfigException ex)
            {
                err.WriteLine($"composersharp {name}: configuration error: {ex.Message}");
                return ComposerSharp.Distributed.ProcessGroupFactory.AbortJobIfDistributed(ConfigErrorExitCode);
            }
            catch (ArgumentException ex) when (ConfigKeyOf(ex) is { } key)
            {
                // A value the library refused, named by its parameter: report it as the configuration key it came from.
                err.WriteLine($"composersharp {name}: configuration error: '{key}': {ConfigException.LibraryMessage(ex)}");
                return ConfigErrorExitCode;
            }
            catch (Exception ex) when (ex is FileNotFoundException or CheckpointException or InvalidDataException or InvalidOperationException or NotSupportedException or ArgumentException)
            {
                // An ArgumentException's message without .NET's "(Parameter '…')" suffix: the parameter is the library's, not the user's.
                err.WriteLine($"composersharp {name}: {(ex is ArgumentException a ? ConfigException.LibraryMessage(a) : ex.Message)}");
                return ComposerSharp.Distributed.ProcessGroupFactory.AbortJobIfDistributed(1);
            }
            catch (System.Runtime.InteropServices.ExternalException ex) when (!parse.GetValue(verbose))
            {
                // libtorch's errors carry its C++ frames after the first line: the reason is that line (e.g. "can't
                // allocate memory: you tried to allocate 480000000000 bytes"); the frames only with --verbose.
                err.WriteLine($"composersharp {name}: libtorch error: {LibTorchReason(ex)} (run with --verbose for libtorch's stack trace)");
                return ComposerSharp.Distributed.ProcessGroupFactory.AbortJobIfDistributed(1);
            }
            catch (Exception ex)
            {
                // Any other failure of one rank ends the whole job (its peers would wait in a collective otherwise).
                err.WriteLine($"composersharp {name}: {ex}");
                return ComposerSharp.Distributed.ProcessGroupFactory.AbortJobIfDistributed(1);
            }
        });
        return command;
    }

    /// <summary>
    /// The first line of a libtorch error without its <c>[enforce fail at file:line]</c> prefix; for an allocation
    /// failure also the size in GiB and what to do.
    /// </summary>
    internal static string LibTorchReason(System.Runtime.InteropServices.ExternalException ex)
    {
        string first = ex.Message.Split('\n', 2)[0].Trim();
        first = System.Text.RegularExpressions.Regex.Replace(first, @"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", string.Empty);
        var bytes = System.Text.RegularExpressions.Regex.Match(first, @"allocate (\d+) bytes");
        return bytes.Success && long.TryParse(bytes.Groups[1].Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out long n)
            ? string.Create(CultureInfo.InvariantCulture, $"{first} ({n / (1024.0 * 1024 * 1024):F1} GiB). The model or batch does not fit in memory: reduce the model's sizes (hidden_size, num_layers, vocab_size, max_sequence_length) or the batch size.")
            : first;
    }

    /// <summary>The top-level key whose snake_case name is the refused parameter's (deviceTrainMicrobatchSize → device_train_microbatch_size), or null.</summary>
    private static string? ConfigKeyOf(ArgumentException ex)
    {
        if (ex.ParamName is not { Length: > 0 } parameter)
        {
            return null;
        }

        string snake = string.Concat(parameter.Select((c, i) => char.IsUpper(c) ? (i > 0 ? "_" : string.Empty) + char.ToLowerInvariant(c) : c.ToString()));
        return TrainJob.TopLevelKeys.Contains(snake) ? snake : null;
    }

    /// <summary>Prints the run summary table: duration, throughput, final metrics and modules replaced by each algorithm.</summary>
    public static void PrintSummary(JobResult result, TextWriter? output = null)
    {
        bool plain = output is not null || Console.IsOutputRedirected;
        IAnsiConsole console = plain
            ? AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output ?? Console.Out), Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors })
            : AnsiConsole.Console;
        if (plain)
        {
            console.Profile.Width = 160; // a file or writer has no terminal width; keep metric names on one line
        }

        var table = new Table().Title("Run summary").AddColumn("what").AddColumn(new TableColumn("value").RightAligned());
        string F(double v) => v.ToString("G6", CultureInfo.InvariantCulture);
        table.AddRow("duration (s)", F(result.Wallclock.TotalSeconds));
        table.AddRow("batches", result.Timestamp.Batch.ToString(CultureInfo.InvariantCulture));
        table.AddRow("samples", result.Timestamp.Sample.ToString(CultureInfo.InvariantCulture));
        table.AddRow("tokens", result.Timestamp.Token.ToString(CultureInfo.InvariantCulture));
        table.AddRow("samples/s", F(result.SamplesPerSecond));
        foreach ((string name, int count) in result.ModulesReplaced)
        {
            table.AddRow(Markup.Escape($"{name}: modules replaced"), count.ToString(CultureInfo.InvariantCulture));
        }

        foreach ((string metric, double value) in result.FinalMetrics.Where(m => !m.Key.StartsWith("time/", StringComparison.Ordinal) && !m.Key.EndsWith(ModuleSurgery.ModulesReplacedMetricSuffix, StringComparison.Ordinal) && !m.Key.Contains("/confusion/", StringComparison.Ordinal)))
        {
            table.AddRow(Markup.Escape(metric), F(value));
        }

        table.AddRow("run folder", Markup.Escape(result.RunFolder));
        if (result.PlotPath is not null)
        {
            table.AddRow("loss plot", Markup.Escape(result.PlotPath));
        }

        console.Write(table);
    }
}
