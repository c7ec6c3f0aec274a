namespace ComposerSharp.Training.Callbacks;

/// <summary>
/// The wall-clock units callbacks report durations in: seconds, minutes, hours or days (Composer's <c>time_unit</c>
/// argument of SpeedMonitor and RuntimeEstimator). Not <see cref="ComposerSharp.Core.TimeUnit"/>, which measures
/// training progress (epochs, batches, samples, tokens).
/// </summary>
internal static class WallClockUnit
{
    /// <summary>Seconds per <paramref name="unit"/>.</summary>
    /// <exception cref="ArgumentException">Not seconds, minutes, hours or days.</exception>
    internal static double SecondsPer(string unit, string paramName) => unit switch
    {
        "seconds" => 1,
        "minutes" => 60,
        "hours" => 3600,
        "days" => 86400,
        _ => throw new ArgumentException($"Invalid time unit '{unit}'; must be one of \"seconds\", \"minutes\", \"hours\" or \"days\".", paramName),
    };
}
