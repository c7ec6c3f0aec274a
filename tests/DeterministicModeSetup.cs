using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Interop;
using NUnit.Framework;

/// <summary>
/// Puts the whole test process in deterministic mode before any test runs. MKL's Conditional Numerical
/// Reproducibility can only be switched on before MKL's first computation in a process, and NUnit runs the tests
/// of one assembly in one process in an order of its own: without this, the bitwise-equality tests (resume,
/// same-seed runs) would pass or fail depending on the CPU (they fail on AMD EPYC, where MKL's code path depends
/// on memory alignment) and on which test ran a matrix product first. Tests that assert bitwise equality also
/// construct their Trainers with <c>deterministicMode: true</c>, which then finds the mode already on; the
/// mechanism itself is tested in child processes (ReproducibilityTests).
/// </summary>
#pragma warning disable CA1050 // Outside any namespace on purpose: NUnit then runs this set-up once for every test in the assembly.
[SetUpFixture]
public sealed class DeterministicModeSetup
{
    [OneTimeSetUp]
    public void SwitchOnDeterministicMode()
    {
        Reproducibility.ConfigureDeterministicMode();
    }
}
