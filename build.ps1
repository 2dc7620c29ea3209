# Restores the local tool manifest (Cake) and runs build/build.cake with the given arguments.
$ErrorActionPreference = 'Stop'
Set-Location $PSScriptRoot
dotnet tool restore | Out-Null
dotnet cake build/build.cake @args
exit $LASTEXITCODE
