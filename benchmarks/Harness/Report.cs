using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Spectre.Console;

namespace ComposerSharp.Benchmarks.Harness;

/// <summary>A speed target (benchmarks/README.md, "Targets") checked against this run's number.</summary>
/// <param name="Target">What is required, e.g. "LPLayerNorm fwd+bwd ≤ 0.7 × fp32 at [8,512,768]".</param>
/// <param name="Value">The measured value (same unit as <paramref name="Limit"/>).</param>
/// <param name="Limit">The limit the value must not exceed.</param>
/// <param name="Met">Whether <paramref name="Value"/> ≤ <paramref name="Limit"/>.</param>
internal sealed record TargetCheck(string Target, double Value, double Limit, bool Met)
{
    /// <summary>Creates a check of value ≤ limit.</summary>
    public static TargetCheck AtMost(string target, double value, double limit) => new(target, Math.Round(value, 4), limit, value <= limit);
}

/// <summary>The outcome of one part: a table for the console, typed data for the JSON, target checks and notes.</summary>
internal sealed class PartReport
{
    /// <summary>Creates a report for part <paramref name="name"/>.</summary>
    public PartReport(string name, string title)
    {
        Name = name;
        Title = title;
    }

    /// <summary>Subcommand name of the part.</summary>
    public string Name { get; }

    /// <summary>Heading.</summary>
    public string Title { get; }

    /// <summary>Table columns.</summary>
    public List<string> Columns { get; } = new();

    /// <summary>Table rows (formatted cells).</summary>
    public List<string[]> Rows { get; } = new();

    /// <summary>Numbers behind the table, serialised as they are.</summary>
    public object? Data { get; set; }

    /// <summary>The targets this part checks.</summary>
    public List<TargetCheck> Targets { get; } = new();

    /// <summary>Remarks printed under the table (shape, method, caveats).</summary>
    public List<string> Notes { get; } = new();

    /// <summary>CPU load while the part ran.</summary>
    public LoadReport? Load { get; set; }

    /// <summary>Why the part did not run, or null.</summary>
    public string? Skipped { get; set; }

    /// <summary>The failure that stopped the part, or null.</summary>
    public string? Error { get; set; }

    /// <summary>Prints the part to the console.</summary>
    public void Print()
    {
        AnsiConsole.WriteLine();
        AnsiConsole.Write(new Rule($"[bold]{Markup.Escape(Title)}[/]").LeftJustified());
        if (Skipped is not null)
        {
            AnsiConsole.MarkupLine($"[yellow]skipped:[/] {Markup.Escape(Skipped)}");
        }

        if (Error is not null)
        {
            AnsiConsole.MarkupLine($"[red]failed:[/] {Markup.Escape(Error)}");
        }

        if (Rows.Count > 0)
        {
            var table = new Table().Border(TableBorder.Simple);
            foreach (string c in Columns)
            {
                table.AddColumn(new TableColumn(Markup.Escape(c)).RightAligned());
            }

            table.Columns[0].LeftAligned();
            foreach (string[] row in Rows)
            {
                table.AddRow(row.Select(Markup.Escape).ToArray());
            }

            AnsiConsole.Write(table);
        }

        foreach (TargetCheck t in Targets)
        {
            string verdict = t.Met ? "[green]met[/]" : "[red]missed[/]";
            AnsiConsole.MarkupLine($"target {Markup.Escape(t.Target)}: {verdict} ({Fmt.N(t.Value, 3)} vs {Fmt.N(t.Limit, 3)})");
        }

        foreach (string n in Notes)
        {
            AnsiConsole.MarkupLine($"[grey]{Markup.Escape(n)}[/]");
        }

        if (Load is not null)
        {
            AnsiConsole.MarkupLine($"[grey]load: {Markup.Escape(Load.ToString())}[/]");
        }
    }
}

/// <summary>The whole run: settings, machine and the parts, written as JSON.</summary>
/// <param name="Command">The command line (subcommand and options).</param>
/// <param name="Quick">Whether this was a <c>--quick</c> smoke run (numbers not meaningful).</param>
/// <param name="Machine">The machine description.</param>
/// <param name="Parts">The parts in the order they ran.</param>
/// <param name="TotalSeconds">Wall time of the whole run.</param>
internal sealed record RunReport(string Command, bool Quick, MachineInfo Machine, IReadOnlyList<PartReport> Parts, double TotalSeconds)
{
    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Writes <c>bench-&lt;date&gt;.json</c> and <c>latest.json</c> (or <c>latest-quick.json</c>) to <paramref name="folder"/>; returns the dated file's path.</summary>
    public string Write(string folder)
    {
        Directory.CreateDirectory(folder);
        string stamp = DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture);
        string suffix = Quick ? "-quick" : string.Empty;
        string path = Path.Combine(folder, $"bench-{stamp}{suffix}.json");
        string text = JsonSerializer.Serialize(this, Json);
        File.WriteAllText(path, text);
        File.WriteAllText(Path.Combine(folder, $"latest{suffix}.json"), text);
        return path;
    }
}

/// <summary>Invariant number formatting for tables.</summary>
internal static class Fmt
{
    /// <summary><paramref name="v"/> with <paramref name="digits"/> decimals, or "n/a" for NaN.</summary>
    public static string N(double v, int digits) => double.IsNaN(v) ? "n/a" : v.ToString("F" + digits.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);

    /// <summary>Median with the interquartile range as ±half-width, e.g. "12.3 ±0.4".</summary>
    public static string Ms(Stats s, int digits = 2) => $"{N(s.Median, digits)} ±{N((s.P75 - s.P25) / 2, digits)}";

    /// <summary>Bytes as MiB.</summary>
    public static string MiB(long bytes) => N(bytes / (1024.0 * 1024.0), 0);
}
