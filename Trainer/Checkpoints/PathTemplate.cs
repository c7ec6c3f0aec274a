using System.Globalization;
using System.Text.RegularExpressions;
using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Checkpoints;

/// <summary>
/// A folder or file name with placeholders, expanded from the run's <see cref="State"/> (Composer's
/// <c>format_name_with_dist_and_time</c>, composer/utils/file_helpers.py): <c>{run_name}</c>, <c>{rank}</c>,
/// <c>{local_rank}</c>, <c>{node_rank}</c>, <c>{world_size}</c> (single process: 0, 0, 0, 1), <c>{epoch}</c>,
/// <c>{batch}</c>, <c>{batch_in_epoch}</c>, <c>{sample}</c>, <c>{sample_in_epoch}</c>, <c>{token}</c>,
/// <c>{token_in_epoch}</c>.
/// </summary>
public static class PathTemplate
{
    private static readonly Regex Placeholder = new(@"\{(?<name>[a-z_]+)\}", RegexOptions.Compiled | RegexOptions.CultureInvariant);

    /// <summary>Replaces the placeholders of <paramref name="template"/> with the run name and the state's timestamp.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="template"/> or <paramref name="state"/> is null.</exception>
    /// <exception cref="FormatException">An unknown placeholder; the message lists the known ones.</exception>
    public static string Expand(string template, State state)
    {
        ArgumentNullException.ThrowIfNull(template);
        ArgumentNullException.ThrowIfNull(state);
        Timestamp ts = state.Timestamp;
        return Placeholder.Replace(template, m => m.Groups["name"].Value switch
        {
            "run_name" => state.RunName,
            "rank" or "local_rank" or "node_rank" => "0",
            "world_size" => "1",
            "epoch" => ts.Epoch.ToString(CultureInfo.InvariantCulture),
            "batch" => ts.Batch.ToString(CultureInfo.InvariantCulture),
            "batch_in_epoch" => ts.BatchInEpoch.ToString(CultureInfo.InvariantCulture),
            "sample" => ts.Sample.ToString(CultureInfo.InvariantCulture),
            "sample_in_epoch" => ts.SampleInEpoch.ToString(CultureInfo.InvariantCulture),
            "token" => ts.Token.ToString(CultureInfo.InvariantCulture),
            "token_in_epoch" => ts.TokenInEpoch.ToString(CultureInfo.InvariantCulture),
            string other => throw new FormatException(
                $"Unknown placeholder '{{{other}}}' in '{template}'; known: {{run_name}}, {{rank}}, {{local_rank}}, {{node_rank}}, {{world_size}}, {{epoch}}, {{batch}}, {{batch_in_epoch}}, {{sample}}, {{sample_in_epoch}}, {{token}}, {{token_in_epoch}}."),
        });
    }
}
