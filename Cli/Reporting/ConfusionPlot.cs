using System.Globalization;
using ComposerSharp.Models;

namespace ComposerSharp.Cli.Reporting;

/// <summary>
/// Draws the last evaluation's confusion matrix (the <c>metrics/eval/confusion/TRUE/PREDICTED</c> counts that
/// <see cref="MulticlassF1Score"/> reports) as a PNG heatmap with ScottPlot, beside <c>loss.png</c>.
/// </summary>
public static class ConfusionPlot
{
    /// <summary>Writes <paramref name="path"/> from <paramref name="latest"/>; returns false, writing nothing, when no confusion counts were logged.</summary>
    /// <param name="latest">The last value of every metric (the CLI's <see cref="MetricHistory.Latest"/>).</param>
    /// <param name="path">The PNG to write.</param>
    /// <exception cref="IOException">The file cannot be written.</exception>
    public static bool Save(IReadOnlyDictionary<string, double> latest, string path)
    {
        const string prefix = "metrics/eval/" + MulticlassF1Score.ConfusionPrefix;
        var cells = new List<(int True, int Predicted, double Count)>();
        foreach ((string key, double value) in latest)
        {
            if (!key.StartsWith(prefix, StringComparison.Ordinal))
            {
                continue;
            }

            string[] parts = key[prefix.Length..].Split('/');
            if (parts.Length == 2 && int.TryParse(parts[0], CultureInfo.InvariantCulture, out int t) && int.TryParse(parts[1], CultureInfo.InvariantCulture, out int p))
            {
                cells.Add((t, p, value));
            }
        }

        if (cells.Count == 0)
        {
            return false;
        }

        int n = cells.Max(c => Math.Max(c.True, c.Predicted)) + 1;
        var counts = new double[n, n];
        foreach ((int t, int p, double count) in cells)
        {
            counts[t, p] = count; // row = true class (top row: class 0), column = predicted class
        }

        var plot = new ScottPlot.Plot();
        var heatmap = plot.Add.Heatmap(counts);
        heatmap.Colormap = new ScottPlot.Colormaps.Viridis();
        plot.Add.ColorBar(heatmap);
        plot.Title("Confusion matrix (last evaluation)");
        plot.XLabel("predicted class");
        plot.YLabel("true class (class 0 at the top)");
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        plot.SavePng(path, 120 + (40 * n), 100 + (40 * n));
        return true;
    }
}
